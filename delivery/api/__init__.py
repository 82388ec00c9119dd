"""delivery's REST endpoints under `/api/v1/` (see `esaroutes.api` for the shared plumbing): injection and webhooks."""
