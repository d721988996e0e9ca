# syntax=docker/dockerfile:1
# Two stages: the first builds a virtualenv holding the dependencies of requirements.lock,
# hash-checked (all from wheels, no compiler), and the package with its migrations inside it;
# the runtime copies only that virtualenv and runs as an unprivileged user. No secret has a
# default: CHAT_SECRET_KEY and CHAT_DATABASE_URL come from the environment at run time.
#
# Python 3.11, the interpreter the test suite runs on. Both stages must use the same image:
# the virtualenv's interpreter is a link to the base image's.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies first, in a layer of their own that a change to the code keeps.
COPY requirements.lock ./
# pip compiles the bytecode here: the runtime's file system may be read-only.
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock
# README.md is the package's long description (pyproject.toml), needed to build it.
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 chat \
 && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chat
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
# Liveness only (the process answers): readiness (/readyz) also depends on the database,
# and an outage must not make every container look broken. docker-compose.yml checks
# readiness where it decides when the balancer may start.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# Alone, the image migrates at start (under an advisory lock, so replicas may start together);
# docker-compose.yml runs a one-shot migration instead and passes --no-migrate.
CMD ["chat", "serve", "--host", "0.0.0.0", "--port", "8000"]
