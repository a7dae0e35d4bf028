"""Pure translation between provider wire formats: no I/O, no network.

`proxy.translate.anthropic` converts Anthropic Messages requests, responses
and streams to OpenAI chat completions and back.
"""
