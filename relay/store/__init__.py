"""The relay's durable store: tables, migrations, and the queries each service needs.

``Store`` (engine.py) runs every call off the event loop; the query modules
(``connectors``, ``jobs``, ``chunks``, ``logs``) hold plain functions taking a
``Connection`` first, so services call ``await store.run(jobs.get, tenant, job_id)``.
"""

from .engine import DuplicateRow, Store

__all__ = ["DuplicateRow", "Store"]
