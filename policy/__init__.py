"""The project's policies: pure rules, a Pulumi policy pack, and an offline runner."""
