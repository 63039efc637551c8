"""The webhook endpoint, as the original demoservice had it: check the signature, read the
event, queue a Celery task, answer 202. Nothing is recorded: the answer says only that the
task was handed to the Celery client."""

import hashlib
import hmac
import http
import json
import logging

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt

from demoservice.tasks import queue_start_demo, queue_stop_demo

logger = logging.getLogger(__name__)


@csrf_exempt
def github_webhook(request):
    signature = request.META.get("HTTP_X_HUB_SIGNATURE_256")
    if not signature:
        return HttpResponseForbidden("Missing signature header")
    expected = "sha256=" + hmac.new(settings.GITHUB_WEBHOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature, expected):
        return HttpResponseForbidden("Invalid signature header")

    payload = json.loads(request.body.decode("utf8"))
    if request.META.get("HTTP_X_GITHUB_EVENT") == "pull_request":
        handle_pull_request(payload)
    return HttpResponse("Webhook received", status=http.HTTPStatus.ACCEPTED)


def handle_pull_request(payload):
    """`opened` and `synchronize` (re)start the pull request's demo, `closed` stops it;
    other actions are answered and dropped."""
    action = payload["action"]
    owner = payload["repository"]["owner"]["login"]
    repo = payload["repository"]["name"]
    pr = payload["number"]
    if action in ("opened", "synchronize"):
        queue_start_demo(owner, repo, pr, send_github_notification=(action == "opened"))
    elif action == "closed":
        queue_stop_demo(owner, repo, pr)
