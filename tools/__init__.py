"""Operator tools: the committed-stack lister CI uses and the ephemeral test stacks."""
