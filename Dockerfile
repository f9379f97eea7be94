# Grove server image: `docker build -t grove . && docker run -p 50051:50051 -p 9090:9090 -v grove-data:/data grove`
# (the admin key is printed once at first start; or pass -e GROVE_ADMIN_KEY=...). Settings: GROVE_* variables
# or a TOML file (-v ./grove.toml:/etc/grove.toml -e GROVE_CONFIG=/etc/grove.toml); see `grove config`.
FROM python:3.11-slim

# a C compiler builds the native kernels at install (without one Grove falls back to numba, slower)
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY engine ./engine
COPY clients ./clients
COPY native ./native
COPY proto ./proto
# compile the numba kernels into the image's cache now, so that containers start warm
RUN pip install --no-cache-dir . && grove warm

ENV GROVE_HOST=0.0.0.0 GROVE_PATH=/data GROVE_METRICS_PORT=9090
VOLUME /data
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s CMD ["grove", "health"]
CMD ["grove", "serve"]
