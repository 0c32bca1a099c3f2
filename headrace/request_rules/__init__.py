"""Rules every service applies to a request alike: validation, cache policy, prefix hashes, how it was served."""
