"""The benchmark: `python -m bench` starts its own PostgreSQL, two `chat serve` instances and
the baselines, drives them with real WebSocket clients over loopback, and prints a table.

Modules: `config` (sizes per profile), `system` (machine, CPU and memory readings),
`cluster` (the database and the server processes), `clients` (WebSocket drivers),
`scenarios` (one function per measurement), `baselines` (raw asyncpg, the naive app),
`naive_app` (the baseline app itself), `report` (table, JSON, plot, progress bar); the peers:
`peer_env` (their venvs under bench/.peers/, a private Redis), `synapse` (Matrix Synapse's
measurements), `synapse_server` (its configuration and processes), `matrix` (its API),
`socketio_peer` and `socketio_app` (python-socketio with its Redis manager).
"""
