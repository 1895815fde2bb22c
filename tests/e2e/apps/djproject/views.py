"""Plain Django views: sync and async, text and JSON, body echo, errors."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse


def hello(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("Hello from Django\n", content_type="text/plain; charset=utf-8")
    response["X-Frame"] = "plain"
    return response


async def info(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "method": request.method,
            "path": request.path,
            "query": sorted(request.GET.lists()),
            "secure": request.is_secure(),
            "scheme": request.scheme,
            "user_agent": request.headers.get("user-agent"),
        }
    )


def echo(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body)
        except ValueError:
            return JsonResponse({"error": "invalid JSON"}, status=400)
        return JsonResponse({"kind": "json", "data": data})
    return JsonResponse({"kind": "form", "data": sorted(request.POST.lists())})
