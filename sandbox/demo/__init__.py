"""Demo data of the sandbox shop (see the sandbox_load_demo command)."""
