#!/bin/sh
# Runs the controller as user demofleet, after putting its secrets where it can read them.
#
# - A DEMOFLEET_* variable set to the empty string counts as unset (a compose or Rancher
#   setting left blank).
# - The webhook secret, the GitHub App key and the OIDC client secret may each come as a
#   file: named by DEMOFLEET_WEBHOOK_SECRET_FILE, DEMOFLEET_GITHUB_APP_KEY_FILE and
#   DEMOFLEET_OIDC_CLIENT_SECRET_FILE, or found in $DEMOFLEET_SECRETS_DIR (default
#   /run/secrets/demofleet) as webhook-secret, github-app-key.pem and oidc-client-secret.
#   The App key may also come as content in DEMOFLEET_GITHUB_APP_KEY (a Rancher answer).
#   Each is copied into /run/demofleet, readable by the demofleet user only, so the mounted
#   originals may stay root's.
set -eu

for var in $(env | sed -n 's/^\(DEMOFLEET_[A-Z0-9_]*\)=$/\1/p'); do unset "$var"; done

secrets=${DEMOFLEET_SECRETS_DIR:-/run/secrets/demofleet}
private=/run/demofleet
install -d -m 0700 -o demofleet -g demofleet "$private"

# secret NAME VALUE_VAR FILE_VAR: point FILE_VAR at a private copy of the secret, taken from
# FILE_VAR's file or $secrets/NAME; nothing when VALUE_VAR holds the value itself.
secret() {
    name=$1 value_var=$2 file_var=$3
    eval "value=\${$value_var:-} file=\${$file_var:-}"
    if [ -n "$file" ]; then
        [ -z "$value" ] || { echo "$value_var and $file_var are both set: keep one" >&2; exit 1; }
        [ -r "$file" ] || { echo "$file_var names $file, which is not a readable file" >&2; exit 1; }
    elif [ -f "$secrets/$name" ]; then
        [ -z "$value" ] || { echo "$value_var is set and $secrets/$name exists: keep one" >&2; exit 1; }
        file=$secrets/$name
    else
        return 0
    fi
    install -m 0400 -o demofleet -g demofleet "$file" "$private/$name"
    export "$file_var=$private/$name"
}

secret webhook-secret DEMOFLEET_WEBHOOK_SECRET DEMOFLEET_WEBHOOK_SECRET_FILE
secret oidc-client-secret DEMOFLEET_OIDC_CLIENT_SECRET DEMOFLEET_OIDC_CLIENT_SECRET_FILE
secret github-app-key.pem DEMOFLEET_GITHUB_APP_KEY DEMOFLEET_GITHUB_APP_KEY_FILE
if [ -n "${DEMOFLEET_GITHUB_APP_KEY:-}" ]; then
    (umask 077; printf '%s\n' "$DEMOFLEET_GITHUB_APP_KEY" >"$private/github-app-key.pem")
    chown demofleet:demofleet "$private/github-app-key.pem"
    export DEMOFLEET_GITHUB_APP_KEY_FILE=$private/github-app-key.pem
    unset DEMOFLEET_GITHUB_APP_KEY
fi
unset DEMOFLEET_SECRETS_DIR

exec setpriv --reuid=demofleet --regid=demofleet --init-groups "$@"
