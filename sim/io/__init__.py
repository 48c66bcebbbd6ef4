"""The simulator's edges: users' files (scenarios, traces), figures, and the forecast database."""
