"""The Python side of the Julia backend: runtime (juliacall), bridge, model translation, setup."""
