"""The machine's own Redis and RabbitMQ (scripts/services.sh starts them), shared with other
test runs: their URLs, a namespace of a test's own, and the clean-up of that namespace.

Every test that touches them works under ``new_names()`` (queues, exchanges and Redis keys
all start with a random namespace), so that concurrent runs never see each other. The
``names`` and ``redis`` fixtures (tests/conftest.py) give a test its namespace and a Redis
client whose keys are deleted afterwards. PostgreSQL: tests/pg.py.
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from brokerscan.names import Names

__all__ = ["BROKER_URL", "RABBIT_URL", "REDIS_URL", "delete_redis_keys", "new_names"]

REDIS_URL = "redis://127.0.0.1:6379/0"
#: The results stream's URL (aio-pika spelling of the default vhost).
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: The same RabbitMQ as Celery's broker URL.
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"


def new_names() -> Names:
    """A namespace of its own: ``t`` and 10 random hex digits."""
    return Names(f"t{secrets.token_hex(5)}")


async def delete_redis_keys(client: Redis, names: Names) -> None:
    """Delete every Redis key of ``names``'s namespace."""
    keys = [key async for key in client.scan_iter(match=f"{names.namespace}:*")]
    if keys:
        await client.delete(*keys)
