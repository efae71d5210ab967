#!/usr/bin/python3
"""Approves a device's pending unlock request by clicking in the console, as a person would:
chromium (headless, WebDriver) signs in with a token, waits on the approvals page for the
device's request to appear (pushed live), clicks Approve, and checks the request page.

  /usr/bin/python3 server/tests/console/approve.py --origin http://localhost:PORT \\
      --token TOKEN --device ORG/NAME

Used by the QEMU scenario `approval-browser` while the guest waits at boot. Exit 0 once the
request page says approved.
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import chromium, wait  # noqa: E402  (the same driver set-up as the test)
from selenium.webdriver.common.by import By  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--origin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--device", required=True, help="ORG/NAME")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nbde-approve-")
    driver = chromium(work, "approver")
    try:
        driver.get(args.origin + "/console/signin")
        driver.find_element(By.CSS_SELECTOR, "details summary").click()
        driver.find_element(By.NAME, "token").send_keys(args.token)
        driver.find_element(By.CSS_SELECTOR, "details form button").click()
        wait(driver, "signed in", lambda d: d.current_url.endswith("/console/devices"))
        driver.get(args.origin + "/console/requests")
        buttons = wait(driver, f"a pending request of {args.device}", lambda d: [
            b for row in d.find_elements(By.CSS_SELECTOR, "tbody#requests tr")
            if args.device in row.text
            for b in row.find_elements(By.CSS_SELECTOR, "button.approve")] or None, seconds=120)
        buttons[0].click()
        wait(driver, "the request page", lambda d: "/console/requests/" in d.current_url)
        text = driver.find_element(By.TAG_NAME, "main").text
        if "approved" not in text:
            raise SystemExit(f"not approved: {text}")
        print(f"approved in the browser: {driver.current_url}")
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
