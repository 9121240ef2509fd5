<?php
// A plain PHP app with no session code of its own, behind session-sidecar.
//
// The sidecar injects the session into request headers (docs/protocol.md §4) and applies
// the instructions this app sends back in response headers (§5; flash §8, owners §11).
// The routes are the contract of examples/README.md. Run with PHP's built-in server,
// this file as its router:
//
//   php -S 127.0.0.1:8000 index.php
//   session-sidecar --config sidecar.yaml      # upstream: http://127.0.0.1:8000

// The sidecar's headers are compact JSON, non-ASCII escaped (§4.1).
function session_header(string $name): array
{
    $value = $_SERVER['HTTP_' . strtoupper(str_replace('-', '_', $name))] ?? '{}';
    return json_decode($value, true) ?? [];
}

// Send one instruction (§5.1) whose value is JSON. json_encode escapes non-ASCII as
// \uXXXX by default (invalid UTF-8 becomes U+FFFD here), but leaves DEL as it is: escape
// that too, so the value is a valid header (§5.2). DEL can only occur inside a string.
function instruct(string $name, $value): void
{
    $json = json_encode($value, JSON_THROW_ON_ERROR | JSON_INVALID_UTF8_SUBSTITUTE);
    header($name . ': ' . str_replace("\x7f", '\u007f', $json));
}

function see_other(): void
{
    header('Location: /', true, 303);
}

$method = $_SERVER['REQUEST_METHOD'];
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);

if (($method === 'GET' || $method === 'HEAD') && $path === '/') {
    $session = session_header('X-Session');
    $flash = session_header('X-Session-Flash');
    instruct('X-Session-Incr', ['visits' => 1]);
    header('Content-Type: text/plain; charset=utf-8');
    echo 'status: ', $_SERVER['HTTP_X_SESSION_STATUS'] ?? 'none', "\n",
        'user: ', $session['user'] ?? 'anonymous', "\n",
        'visits: ', ($session['visits'] ?? 0) + 1, "\n",
        'flash: ', $flash['message'] ?? '-', "\n";
} elseif ($method === 'POST' && $path === '/login') {
    $user = $_POST['user'] ?? '';
    if (!is_string($user) || $user === '') {
        http_response_code(400);
        header('Content-Type: text/plain; charset=utf-8');
        echo "user is required\n";
        return;
    }
    instruct('X-Session-Regenerate', 1); // a new session id on login (§9.4)
    instruct('X-Session-Owner', $user); // attach the session to its owner (§11)
    instruct('X-Session-Set', ['user' => $user]);
    instruct('X-Session-Flash-Set', ['message' => "welcome $user"]);
    see_other();
} elseif ($method === 'POST' && $path === '/logout') {
    instruct('X-Session-Destroy', 1); // then the flash starts a fresh session (§5.3)
    instruct('X-Session-Flash-Set', ['message' => 'logged out']);
    see_other();
} elseif ($method === 'POST' && $path === '/sign-out-others') {
    instruct('X-Session-Revoke-Others', 1); // the owner's other sessions (§11.1)
    instruct('X-Session-Flash-Set', ['message' => 'other devices signed out']);
    see_other();
} else {
    http_response_code(404);
    header('Content-Type: text/plain; charset=utf-8');
    echo "not found\n";
}
