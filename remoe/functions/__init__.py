"""Serverless functions: cold experts served by instances that start on demand and scale to zero."""
