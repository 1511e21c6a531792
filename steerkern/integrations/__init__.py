"""Bridges to other intervention frameworks; each module imports its framework only when used.

- ``steerkern.integrations.pyvene``: pyvene interventions that stand in for AxBench's.
- ``steerkern.integrations.transformer_lens``: a hook function for ``blocks.{L}.hook_resid_post``.
"""
