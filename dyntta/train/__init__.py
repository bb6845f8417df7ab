"""Training commands: recognizers and enhancers."""
