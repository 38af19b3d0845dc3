"""Test helpers shipped with forewarn: tiny-model fixtures and a local OpenAI-compatible server."""
