"""Warm local jobs: a fork server with torch and transformers imported, and the command's client."""
