# The project image: the four services, the `cancelflow` CLI (topics, ...) and the SMTP sink.
# Kafka and PostgreSQL run from their own images (see docker-compose.yml), so no JDK here.
# BASE_IMAGE: the official python:3.11-slim, or where no registry is reachable the Debian-built
# cancelflow-local/python:3.11 (scripts/compose-images).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so editing the sources does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY shared ./shared
COPY services ./services
COPY cancelflow ./cancelflow
RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

RUN useradd --create-home --uid 10001 --user-group cancelflow
USER cancelflow

EXPOSE 8001 8002 8003 8004 1025

CMD ["cancelflow", "--help"]
