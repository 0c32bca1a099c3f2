"""The HTTP gateway (OpenAI-compatible), served in the router process."""
