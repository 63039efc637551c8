"""Celery tasks, queued as the original queued them: a chain of `start_demo_task` (and,
for a newly opened pull request, `notify_github_task`) for a start, `stop_demo_task` for a
stop. In this stand-in the tasks do nothing: the benchmark measures the webhook's intake,
and the worker only drains the queue so that it does not grow without bound."""

import logging
import os

from celery import Celery, chain

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demoservice.settings")

app = Celery("demoservice")
app.config_from_object("django.conf:settings", namespace="CELERY")

logger = logging.getLogger(__name__)


def demo_context(owner, repo, pr):
    """What the original passed with every task: the demo's URL and its pull request."""
    url = f"{repo}-pr-{pr}.run.demo.haus"
    return {"demo_url": url, "github_user": owner, "github_repo": repo, "github_pr": pr}


@app.task(bind=True, max_retries=2)
def start_demo_task(self, demo_url, github_user, github_repo, github_pr, context, **kwargs):
    logger.debug("start %s (stand-in: nothing started)", demo_url)
    return demo_url


@app.task(bind=True, max_retries=2)
def stop_demo_task(self, demo_url, context, **kwargs):
    logger.debug("stop %s (stand-in: nothing stopped)", demo_url)
    return demo_url


@app.task(bind=True, max_retries=3)
def notify_github_task(self, message, demo_url, github_user, github_repo, github_pr, context, **kwargs):
    logger.debug("notify %s (stand-in: GitHub not called)", demo_url)
    return False


def queue_start_demo(owner, repo, pr, send_github_notification=False):
    context = demo_context(owner, repo, pr)
    tasks = [start_demo_task.s(context=context, **context)]
    if send_github_notification:
        tasks.append(notify_github_task.s(context=context, **context))
    chain(*tasks).apply_async()


def queue_stop_demo(owner, repo, pr):
    context = demo_context(owner, repo, pr)
    stop_demo_task.delay(context=context, **context)
