"""Function platforms: where a plan's remote-expert functions run (local processes, or Knative)."""
