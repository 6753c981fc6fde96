"""What tests of several tiers share: private PostgreSQL servers, and running the ``sched`` CLI or an asyncio
connection from a test. The tests folder is on ``sys.path`` (pytest puts it there for tests/conftest.py), so
``from support.private_server import PrivateServer`` works from any tier."""
