"""Running the mesh on one machine: processes of `headrace up`, a private Redis."""
