module example.com/session-sidecar-example

go 1.19
