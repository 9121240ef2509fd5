// A Go net/http app with no session code of its own, behind session-sidecar.
//
// The sidecar injects the session into request headers (docs/protocol.md §4) and applies
// the instructions this app sends back in response headers (§5; flash §8, owners §11).
// The routes are the contract of examples/README.md. Standard library only.
//
//	APP_PORT=8000 ./run.sh
//	session-sidecar --config sidecar.yaml      # upstream: http://127.0.0.1:8000
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"unicode/utf16"
)

// sessionHeader decodes one of the sidecar's JSON headers (compact, non-ASCII escaped,
// §4.1), keeping numbers exact.
func sessionHeader(r *http.Request, name string) map[string]any {
	m := map[string]any{}
	value := r.Header.Get(name)
	if value == "" {
		return m
	}
	d := json.NewDecoder(strings.NewReader(value))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return map[string]any{}
	}
	return m
}

// asciiJSON marshals v and escapes everything outside printable ASCII as \uXXXX:
// encoding/json writes non-ASCII characters as they are, and a header value should be
// ASCII (§5.2). Outside strings JSON text is ASCII already, so this only touches strings.
func asciiJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain maps, strings and ints are marshalled here
	}
	var s strings.Builder
	for _, r := range string(b) {
		switch {
		case r < 0x7f:
			s.WriteRune(r)
		case r > 0xffff:
			hi, lo := utf16.EncodeRune(r)
			fmt.Fprintf(&s, `\u%04x\u%04x`, hi, lo)
		default:
			fmt.Fprintf(&s, `\u%04x`, r)
		}
	}
	return s.String()
}

// instruct sends one instruction (§5.1) whose value is JSON.
func instruct(w http.ResponseWriter, name string, value any) {
	w.Header().Add(name, asciiJSON(value))
}

func seeOther(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func index(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	session := sessionHeader(r, "X-Session")
	flash := sessionHeader(r, "X-Session-Flash")
	status := r.Header.Get("X-Session-Status")
	if status == "" {
		status = "none"
	}
	user, ok := session["user"].(string)
	if !ok {
		user = "anonymous"
	}
	var visits int64
	if n, ok := session["visits"].(json.Number); ok {
		visits, _ = strconv.ParseInt(n.String(), 10, 64)
	}
	message, ok := flash["message"].(string)
	if !ok {
		message = "-"
	}
	instruct(w, "X-Session-Incr", map[string]int{"visits": 1})
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "status: %s\nuser: %s\nvisits: %d\nflash: %s\n", status, user, visits+1, message)
}

func login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	user := r.PostFormValue("user") // parses the urlencoded body
	if user == "" {
		http.Error(w, "user is required", http.StatusBadRequest)
		return
	}
	instruct(w, "X-Session-Regenerate", 1) // a new session id on login (§9.4)
	instruct(w, "X-Session-Owner", user)   // attach the session to its owner (§11)
	instruct(w, "X-Session-Set", map[string]string{"user": user})
	instruct(w, "X-Session-Flash-Set", map[string]string{"message": "welcome " + user})
	seeOther(w, r)
}

func logout(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	instruct(w, "X-Session-Destroy", 1) // then the flash starts a fresh session (§5.3)
	instruct(w, "X-Session-Flash-Set", map[string]string{"message": "logged out"})
	seeOther(w, r)
}

func signOutOthers(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	instruct(w, "X-Session-Revoke-Others", 1) // the owner's other sessions (§11.1)
	instruct(w, "X-Session-Flash-Set", map[string]string{"message": "other devices signed out"})
	seeOther(w, r)
}

func main() {
	port := os.Getenv("APP_PORT")
	if port == "" {
		port = "8000"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", index)
	mux.HandleFunc("/login", login)
	mux.HandleFunc("/logout", logout)
	mux.HandleFunc("/sign-out-others", signOutOthers)
	addr := "127.0.0.1:" + port
	log.Printf("go example listening on http://%s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
