"""The package's errors, in a module with no heavy imports (the service catches them at import)."""


class DependencyUnavailable(RuntimeError):
    """A service a job needs (Redis, the registry) does not answer; the message says what to do."""


class FeatureStoreUnavailable(RuntimeError):
    """The online store did not answer within the timeout (the request gets 503)."""


class MissingFeatures(LookupError):
    """The feature service does not serve a feature the model needs."""


class ModelUnavailable(RuntimeError):
    """The registry does not answer, or names no version for the alias."""


class BadBatchInput(ValueError):
    """A batch input file cannot be scored; the message names the column or the row."""
