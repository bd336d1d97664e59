"""HTTP plumbing shared by every route: the server, authentication and roles, the error
envelope, per-request keys, rate limits and the client address (the routes themselves
are in relay/api/)."""
