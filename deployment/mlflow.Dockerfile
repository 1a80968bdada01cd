# The MLflow server with the PostgreSQL driver its backend store needs.
FROM python:3.11-slim
ARG MLFLOW_VERSION
RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==2.9.13" \
    && useradd --create-home --uid 1000 mlflow && mkdir /mlartifacts && chown mlflow /mlartifacts
USER mlflow
EXPOSE 5000
