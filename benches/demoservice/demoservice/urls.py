from django.urls import path

from demoservice import views

urlpatterns = [path("webhook/github", views.github_webhook)]
