#!/usr/bin/python3
"""Approves a device's pending unlock request by clicking in the console, as a person would:
chromium (headless, WebDriver) signs in with a token, waits on the approvals page for the
device's request to appear (pushed live), clicks Approve, and checks the request page.

  NBDE_TOKEN=… /usr/bin/python3 server/tests/console/approve.py \\
      --origin http://localhost:PORT --device ORG/NAME

The token comes from the environment, never the command line (which logs show).

Used by the QEMU scenario `approval-browser` while the guest waits at boot. Exit 0 once the
request page says approved.
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import chromium, click_approve, wait  # noqa: E402  (the test's own helpers)
from selenium.webdriver.common.by import By  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--origin", required=True)
    ap.add_argument("--device", required=True, help="ORG/NAME")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nbde-approve-")
    driver = chromium(work, "approver")
    try:
        driver.get(args.origin + "/console/signin")
        driver.find_element(By.CSS_SELECTOR, "details summary").click()
        driver.find_element(By.NAME, "token").send_keys(os.environ["NBDE_TOKEN"])
        driver.find_element(By.CSS_SELECTOR, "details form button").click()
        wait(driver, "signed in", lambda d: d.current_url.endswith("/console/devices"))
        driver.get(args.origin + "/console/requests")
        wait(driver, f"a pending request of {args.device}, clicked",
             lambda d: click_approve(d, args.device), seconds=120)
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
