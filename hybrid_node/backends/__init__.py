"""Old home of the torch loops and the Julia bridge; each module here is an alias of its new home."""
