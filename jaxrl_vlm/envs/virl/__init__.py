"""V-IRL navigation (spec virl.md): route reader, rails, verifier, prompts and the JAX environment."""
