"""The mini-connector agent: runs read-only jobs against local sources for the relay."""
