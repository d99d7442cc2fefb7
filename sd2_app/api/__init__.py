"""The service API that the UI, the CLI and other front ends call: request types, validation, Service."""
