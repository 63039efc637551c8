"""Settings of the demoservice stand-in: the original's, less what the webhook never uses.

The original (Django 1.11) had the admin, OpenID sign-in and templates on top; its webhook
view went through the same middleware stack as here, and touched no database.
"""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("SECRET_KEY", "no_secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_X_FORWARDED_HOST = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "demoservice",
]

# As the original: every request passes all of these.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demoservice.urls"
WSGI_APPLICATION = "demoservice.wsgi.application"

# The original's default database; the webhook never reads or writes it.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(BASE_DIR, "db.sqlite3")}}

USE_TZ = True
TIME_ZONE = "UTC"

# GitHub payloads reach 25 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = 25 * 1024 * 1024

# Celery, configured as the original: only the broker's address. Everything else is
# Celery's default (see README.md, "Durability").
CELERY_BROKER_URL = os.environ.get("DEMOSERVICE_BROKER_URL", "amqp://guest:guest@localhost:5672//")

GITHUB_WEBHOOK_SECRET = os.environ.get("GITHUB_WEBHOOK_SECRET", "")

LOGGING = {
    "version": 1,
    "handlers": {"console": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"demoservice": {"handlers": ["console"], "level": "WARNING"}},
}
