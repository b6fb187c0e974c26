"""The platform: storage of processes, trained twins and runs, plus the HTTP API.

Layout: `settings` (configuration), `db` (engines and sessions), `orm` (tables),
`migrate` (Alembic from Python), `services/` (every query lives there), `schemas`
(pydantic models at the HTTP edge), `routes/` (thin FastAPI routers), `app` (factory).
"""
