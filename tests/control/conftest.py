from control_helpers import agent_factory, backend  # noqa: F401 - fixtures
