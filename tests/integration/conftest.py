from tests.stores import demo_store, fresh_demo_store  # noqa: F401 - fixtures
