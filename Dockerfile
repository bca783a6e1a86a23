# evops in a container: one image, two processes (the console and the listener).
#   docker build -t evops .
#   docker run --env-file evops.env -p 8000:8000 evops                      # console
#   docker run --env-file evops.env evops python manage.py run_nats_listener  # listener
#   docker run --env-file evops.env evops python manage.py migrate            # once per release
# Static files are collected at build time (they need no setting); WhiteNoise serves
# them from the console process.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EVOPS_ENV_FILE= \
    DEBUG=false \
    STATIC_ROOT=/app/staticfiles

WORKDIR /app
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY manage.py ./
COPY evops ./evops
COPY assets ./assets
COPY claims ./claims
COPY console ./console
COPY templates ./templates
RUN python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --no-create-home evops
USER evops

EXPOSE 8000
# The console's liveness; for the listener container use
#   --health-cmd "python manage.py listener_health"
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/static/admin/css/base.css', timeout=4)"
CMD ["daphne", "--bind", "0.0.0.0", "--port", "8000", "--proxy-headers", "evops.asgi:application"]
