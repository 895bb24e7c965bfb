"""SMS backends: ``console`` and ``locmem`` (development, tests) and ``twilio`` (a real one)."""
