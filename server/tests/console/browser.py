#!/usr/bin/python3
"""The web console in a real browser: Debian's chromium through chromium-driver (WebDriver,
headless), against a real nbde-server process and stock clevis.

  /usr/bin/python3 server/tests/console/browser.py [--screenshots DIR]

Proves, as a user would check it:
- an owner signs in with a bearer token, enrols a passkey (WebDriver's virtual
  authenticator), signs out and signs in again with the passkey alone;
- stock `clevis decrypt`, retried as a boot would, waits on a device that needs approval;
  the request appears on the open approvals page without a reload (server-sent events);
  the approval is clicked; the decrypt completes; the device's history names the approver;
- a viewer's page has no approve button, and a POST forged from the viewer's session,
  with its own CSRF token, gets 403 and changes nothing;
- every page answers with the Content Security Policy and the session cookie is HttpOnly
  and SameSite=Strict.
With --screenshots, each page is saved at desktop and phone width.

Needs the debug build (`cargo build --workspace`), and Debian's chromium, chromium-driver,
python3-selenium, clevis, tang (tests/run.sh installs them). Runs as root: chromium gets
--no-sandbox.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.virtual_authenticator import (
    Protocol, Transport, VirtualAuthenticatorOptions)
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SERVER = os.path.join(TARGET, "debug", "nbde-server")
DESKTOP = (1280, 900)
PHONE = (390, 844)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nbde:
    """A real `nbde-server serve` on a fresh SQLite store, and its CLI."""

    def __init__(self, work):
        self.work = work
        self.data = os.path.join(work, "data")
        out = subprocess.run([SERVER, "init", "--data", self.data], capture_output=True,
                             text=True, check=True).stdout
        self.token = out.strip().splitlines()[-1]
        self.port = free_port()
        self.origin = f"http://localhost:{self.port}"
        self.log = open(os.path.join(work, "server.log"), "w")
        self.proc = subprocess.Popen(
            [SERVER, "serve", "--data", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--console-origin", self.origin], stdout=self.log, stderr=self.log)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("nbde-server did not start")

    def cli(self, *args, token=None):
        env = dict(os.environ, NBDE_SERVER=f"http://127.0.0.1:{self.port}",
                   NBDE_TOKEN=token or self.token)
        return subprocess.run([SERVER, *args], env=env, capture_output=True, text=True,
                              check=True).stdout

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def chromium(work, name):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={os.path.join(work, 'chromium-' + name)}",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(driver, what, condition, seconds=20):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"{what}: not seen within {seconds} s on {driver.current_url}\n"
                             f"{driver.find_element(By.TAG_NAME, 'body').text[:2000]}")


def check(condition, message):
    if not condition:
        raise AssertionError(message)
    print(f"ok: {message}")


def headers_of(url, cookie=None):
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        response = opener.open(request, timeout=5)
    except urllib.error.HTTPError as e:
        response = e
    return response.status, response.headers


class Screens:
    def __init__(self, directory):
        self.directory = directory
        self.taken = []

    def shoot(self, driver, name):
        if not self.directory:
            return
        for label, (w, h) in (("desktop", DESKTOP), ("phone", PHONE)):
            driver.set_window_size(w, h)
            time.sleep(0.2)
            # The whole page, not only the first screenful.
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(w, max(h, min(height + 140, 4000)))
            path = os.path.join(self.directory, f"{name}-{label}.png")
            driver.save_screenshot(path)
            self.taken.append(path)
        driver.set_window_size(*DESKTOP)


def sign_in_with_token(driver, nbde, token):
    driver.get(nbde.origin + "/console/signin")
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "details form button").click()
    wait(driver, "the devices page after token sign-in",
         lambda d: d.current_url.endswith("/console/devices"))


def decrypt_until_allowed(jwe_path, out):
    """Stock clevis, retried every second as an unattended boot retries."""
    deadline = time.time() + 120
    while time.time() < deadline:
        with open(jwe_path, "rb") as jwe:
            p = subprocess.run(["clevis", "decrypt"], stdin=jwe, capture_output=True)
        out["attempts"] = out.get("attempts", 0) + 1
        if p.returncode == 0:
            out["plaintext"] = p.stdout
            out["at"] = time.time()
            return
        time.sleep(1)


def click_approve(driver, device):
    """Clicks the device's Approve button once it is there (a live update may replace the
    rows between finding and clicking: then the next look finds the new one)."""
    try:
        for row in driver.find_elements(By.CSS_SELECTOR, "tbody#requests tr"):
            if device in row.text:
                for button in row.find_elements(By.CSS_SELECTOR, "button.approve"):
                    button.click()
                    return True
    except StaleElementReferenceException:
        pass
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshots", help="save each page at desktop and phone width here")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="nbde-console-")
    if args.screenshots:
        os.makedirs(args.screenshots, exist_ok=True)
    screens = Screens(args.screenshots)
    nbde = Nbde(work)
    drivers = []
    try:
        nbde.cli("org", "add", "acme")
        device = nbde.cli("device", "add", "--org", "acme", "--json", "db1")
        thp = next(line.split('"')[3] for line in device.splitlines() if '"thp"' in line)
        nbde.cli("device", "add", "--org", "acme", "web1")
        alice = nbde.cli("account", "add", "--role", "owner", "acme", "alice").strip().splitlines()[-1]
        victor = nbde.cli("account", "add", "--role", "viewer", "acme", "victor").strip().splitlines()[-1]
        nbde.cli("device", "tag", "acme/db1", "tier=db")
        nbde.cli("group", "add", "--tag", "tier=db", "--approver", "alice", "acme", "dbas")
        nbde.cli("netlist", "add", "acme", "office", "192.0.2.0/24", "2001:db8::/48")

        # Headers a browser relies on.
        status, h = headers_of(nbde.origin + "/console/signin")
        check(status == 200 and "script-src 'self'" in h["Content-Security-Policy"]
              and "unsafe-inline" not in h["Content-Security-Policy"],
              "the sign-in page carries a CSP with no inline script")
        status, h = headers_of(nbde.origin + "/console/devices")
        check(status == 303 and h["Location"] == "/console/signin",
              "a page without a session sends the browser to sign in")

        # 1. Token, then a passkey, then the passkey alone.
        driver = chromium(work, "alice")
        drivers.append(driver)
        driver.get(nbde.origin + "/console/signin")
        screens.shoot(driver, "signin")
        sign_in_with_token(driver, nbde, alice)
        cookie = driver.get_cookie("nbde_session")
        check(cookie["httpOnly"] and cookie["sameSite"] == "Strict",
              "the session cookie is HttpOnly and SameSite=Strict")
        authenticator = VirtualAuthenticatorOptions()
        authenticator.protocol = Protocol.CTAP2
        authenticator.transport = Transport.INTERNAL
        authenticator.has_resident_key = True
        authenticator.has_user_verification = True
        authenticator.is_user_verified = True
        driver.add_virtual_authenticator(authenticator)
        driver.get(nbde.origin + "/console/passkeys")
        name = driver.find_element(By.CSS_SELECTOR, "#passkey-add input[name=name]")
        name.clear()
        name.send_keys("laptop")
        driver.find_element(By.CSS_SELECTOR, "#passkey-add button").click()
        wait(driver, "the enrolled passkey in the list",
             lambda d: "laptop" in d.find_element(By.TAG_NAME, "table").text)
        check(len(driver.get_credentials()) == 1, "the authenticator holds one credential")
        screens.shoot(driver, "passkeys")
        driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
        wait(driver, "the sign-in page after sign-out", lambda d: d.current_url.endswith("/signin"))
        driver.get(nbde.origin + "/console/devices")
        check(driver.current_url.endswith("/console/signin"), "signed out: the session is gone")
        driver.find_element(By.CSS_SELECTOR, "#passkey-signin input[name=account]").send_keys("alice")
        driver.find_element(By.CSS_SELECTOR, "#passkey-signin button").click()
        wait(driver, "the devices page after passkey sign-in",
             lambda d: d.current_url.endswith("/console/devices"))
        check("acme/db1" in driver.find_element(By.TAG_NAME, "table").text,
              "signed in with the passkey alone: the devices page lists acme/db1")
        audit = nbde.cli("audit")
        check("console sign-in" in audit and "passkey" in audit,
              "the audit trail records the passkey sign-in")

        # 2. Stock clevis waits on approval; the request shows up live; approve it.
        driver.get(nbde.origin + "/console/requests")
        driver.execute_script("window.nbdeNoReload = 1")
        jwe = os.path.join(work, "secret.jwe")
        url = f"http://127.0.0.1:{nbde.port}/o/acme/d/db1"
        with open(jwe, "wb") as out:
            subprocess.run(["clevis", "encrypt", "tang", f'{{"url":"{url}","thp":"{thp}"}}'],
                           input=b"approved in a browser", stdout=out, check=True)
        result = {}
        waiter = threading.Thread(target=decrypt_until_allowed, args=(jwe, result))
        waiter.start()
        row = wait(driver, "the pending request, pushed to the open page",
                   lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "tbody#requests tr")
                              if "acme/db1" in r.text] or None)[0]
        check(driver.execute_script("return window.nbdeNoReload") == 1,
              "the request appeared without a reload (server-sent events)")
        check("plaintext" not in result, "stock clevis is still waiting before the approval")
        screens.shoot(driver, "approvals")
        driver.execute_script("window.nbdeNoReload = 1")
        wait(driver, "the approve button, clicked", lambda d: click_approve(d, "acme/db1"))
        wait(driver, "the request page after approving", lambda d: "/console/requests/" in d.current_url)
        check("approved" in driver.find_element(By.TAG_NAME, "main").text
              and "alice" in driver.find_element(By.TAG_NAME, "main").text,
              "the request page says approved by alice")
        screens.shoot(driver, "request")
        waiter.join(timeout=60)
        check(result.get("plaintext") == b"approved in a browser",
              f"stock clevis decrypt completed after the click ({result.get('attempts')} attempts)")
        driver.get(nbde.origin + "/console/orgs/acme/devices/db1")
        history = driver.find_element(By.CSS_SELECTOR, "table.history").text
        check("approved by alice" in history, "the device's history names the approver")
        screens.shoot(driver, "device")
        driver.get(nbde.origin + "/console/devices")
        screens.shoot(driver, "devices")
        for page in ("netlists", "groups", "accounts"):
            driver.get(f"{nbde.origin}/console/orgs/acme/{page}")
            check(driver.find_elements(By.CSS_SELECTOR, "main form button"),
                  f"an owner sees the {page} page's forms")
            screens.shoot(driver, page)
        driver.get(nbde.origin + "/console/audit")
        screens.shoot(driver, "audit")

        # 3. A viewer: no buttons, and a forged POST is refused.
        with open(jwe, "rb") as f:
            p = subprocess.run(["clevis", "decrypt"], stdin=f, capture_output=True)
        check(p.returncode != 0, "the approval was used once: the next decrypt waits again")
        pending = nbde.cli("requests")
        pending_id = pending.split()[0].lstrip("#")
        viewer = chromium(work, "victor")
        drivers.append(viewer)
        sign_in_with_token(viewer, nbde, victor)
        viewer.get(nbde.origin + "/console/requests")
        wait(viewer, "the pending request on the viewer's page",
             lambda d: "acme/db1" in d.find_element(By.CSS_SELECTOR, "tbody#requests").text)
        check(not viewer.find_elements(By.CSS_SELECTOR, "button.approve, button.deny"),
              "a viewer's approvals page has no approve or deny button")
        viewer.get(nbde.origin + "/console/orgs/acme/devices/db1")
        check(not viewer.find_elements(By.CSS_SELECTOR, "section.controls"),
              "a viewer's device page has no controls")
        status = viewer.execute_async_script(
            """const done = arguments[arguments.length - 1];
               const body = new URLSearchParams({csrf: document.querySelector('meta[name="csrf-token"]').content});
               fetch('/console/requests/' + arguments[0] + '/approve', {method: 'POST', body})
                 .then(r => done(r.status), e => done(String(e)));""", pending_id)
        check(status == 403, f"a viewer's forged approve POST with its own CSRF token: {status}")
        check("pending" in nbde.cli("requests"), "the request is still pending after the forgery")
        status = viewer.execute_async_script(
            """const done = arguments[arguments.length - 1];
               fetch('/console/requests/' + arguments[0] + '/approve',
                     {method: 'POST', body: new URLSearchParams({csrf: 'forged'})})
                 .then(r => done(r.status), e => done(String(e)));""", pending_id)
        check(status == 403, "a POST without the session's CSRF token gets 403")
    finally:
        for d in drivers:
            d.quit()
        nbde.stop()
        shutil.rmtree(work, ignore_errors=True)
    if screens.taken:
        print(f"screenshots: {len(screens.taken)} in {args.screenshots}")
    print("console browser test: passed")


if __name__ == "__main__":
    sys.exit(main())
