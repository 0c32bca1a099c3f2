"""Models as the services share them: what a name means (registry) and where its weights live (store)."""
