"""The routes side of the REST API (`/api/v1/routes/...`): thin views over `routes.services` (see esaroutes/api)."""
