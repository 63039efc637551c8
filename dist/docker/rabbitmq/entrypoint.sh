#!/bin/sh
# Start RabbitMQ as user rabbitmq, with the management plugin, listening on every address.
# The default user (an administrator, for the management API) and vhost are made on the first
# start only, when the node has no data yet; later changes of the password go through
# rabbitmqctl change_password.
set -eu

if [ -n "${RABBITMQ_DEFAULT_PASS_FILE:-}" ]; then
    [ -r "$RABBITMQ_DEFAULT_PASS_FILE" ] || { echo "RABBITMQ_DEFAULT_PASS_FILE $RABBITMQ_DEFAULT_PASS_FILE is not readable" >&2; exit 1; }
    RABBITMQ_DEFAULT_PASS=$(cat "$RABBITMQ_DEFAULT_PASS_FILE")
fi
[ -n "${RABBITMQ_DEFAULT_PASS:-}" ] ||
    { echo "set RABBITMQ_DEFAULT_PASS or RABBITMQ_DEFAULT_PASS_FILE: the password of user $RABBITMQ_DEFAULT_USER" >&2; exit 1; }
case $RABBITMQ_DEFAULT_PASS in
    *"
"*) echo "the RabbitMQ password must be one line" >&2; exit 1 ;;
esac

# rabbitmq.conf holds the password: readable by the rabbitmq user only, in the container's
# own file system, never in the image.
conf=/etc/rabbitmq/conf.d/10-demofleet.conf
umask 077
cat >"$conf" <<CONF
listeners.tcp.default = 5672
management.tcp.port = 15672
loopback_users = none
default_user = $RABBITMQ_DEFAULT_USER
default_pass = $RABBITMQ_DEFAULT_PASS
default_vhost = $RABBITMQ_DEFAULT_VHOST
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
CONF
chown rabbitmq:rabbitmq "$conf"
umask 022
unset RABBITMQ_DEFAULT_PASS RABBITMQ_DEFAULT_PASS_FILE
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
