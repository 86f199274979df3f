"""heteromoe's built-in backends, registered through the `heteromoe.backends` entry points."""
