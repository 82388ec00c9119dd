"""The REST API's shared plumbing (`/api/v1/`): who is calling, what they may do, errors, ETags, pages, limits.

This package imports neither app (an import-linter contract says so): the endpoints live in each app's `api`
package (`routes/api/`, `delivery/api/`), thin over the same services the pages and commands use, so validation
and audit happen once. The modules:

- `auth`: `Authorization: Bearer TOKEN` (esaroutes.models.ApiToken, stored hashed, optionally read-only and
  expiring) and the session with CSRF. Tokens are made by `esaroutes.apitokens` (page `/tokens/`, command
  `manage.py apitoken`).
- `permissions`: each view declares `read_capability` (GET) and `write_capability` (everything else), names from
  `esaroutes.permissions` ("routes.view", "queue.change"...): the role decides, exactly as on the pages; a
  read-only token may only read; a view declaring nothing is refused to all. DRF views are exempt from
  `LoginRequiredMiddleware`, so this permission (the default in `REST_FRAMEWORK`) is what keeps them closed.
- `errors`: problem+json (RFC 9457) for every error, `errors: [{field, detail}]` on validation failures.
- `conditional`: `ETag` on reads, `require_match` for writes (428 without If-Match, 412 on a stale one).
- `pagination`: keyset by id (`after`/`before` + `limit`, `next` link), never OFFSET.
- `throttling`: `ESAROUTES_API_RATE` per token; `views.ApiView` bounds the body (`max_body_bytes`).
- `schema`: the problem responses added to every operation of `/api/v1/schema/`.

How to add an endpoint (say, in delivery):

1. `delivery/api/views.py`: a subclass of `esaroutes.api.views.ApiView` per resource, with
   `read_capability`/`write_capability`, DRF serializers for input and output (`@extend_schema(request=...,
   responses=...)` so the schema is exact), and each write calling the app's service with
   `actor=views.actor(request)` (the token, audited as `api:<user>/<token>`, or the session's user).
   A model's rows: `views.CollectionView` at `<noun>/` (GET lists `rows()` in keyset pages, POST validates
   the body and calls `create`) and `views.ObjectView` at `<noun>/<pk>/` (`change` and `remove`; it locks the
   row and checks If-Match, `conditional.require_match`, in the transaction of the change), both setting
   `serializer_class` (and `input_class` when the body differs) and `rows()`, usually in one shared base
   (`class _Profiles(views.RowsView)`, as `delivery/api/bounce_profiles.py` does); the schema follows from them.
   Another list: `self.paginate_queryset(qs)` then `self.get_paginated_response(data)` (keyset by id; set
   `keyset_descending = True` for newest first); another write to an existing object locks it and calls
   `conditional.require_match` itself.
   Bad input: `raise errors.invalid("field", "message")` or a serializer's `is_valid(raise_exception=True)`.
2. `delivery/api/urls.py`: `urlpatterns = [path("queue/recipients/", views.X.as_view(), name="queue-recipients")]`
   (no `app_name`), and one line in `esaroutes/api_urls.py`: `path("", include("delivery.api.urls"))`.
3. pyproject.toml's `delivery` layers contract: `api` sits in the top layer, beside `management`.
4. tests/security/test_access_control.py: the URL in `API_ACCESS` (who may use it), and tests under
   `tests/api/` for the happy path and each refusal (`tests/api/conftest.py` has `api_client(user, ...)`).
"""
