"""Similar Prompts Searching (SPS): forecast a prompt's expert activation from similar past prompts."""
