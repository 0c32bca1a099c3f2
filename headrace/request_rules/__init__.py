"""Rules every service applies to a request the same way: validation, cache
policy, prefix hashes, how an answer was served."""
