#!/usr/bin/python3
"""A real browser on `plumb ui` (run by tests/ui.rs inside its sandbox): Debian's chromium,
headless, driven through chromium-driver by python3-selenium. It opens the address plumb ui
printed, finds every container of the stack in the drawing, watches a container's byte
counter move while TRAFFIC runs, sees the policy denial in red with its stack-file line,
traces a flow with the form, clicks a container and its capture button, and waits for the
pcapng file to land in DOWNLOADS. Prints one JSON object of what it saw; exits 1 naming what
it did not see. Every browser process is ended by PID before it returns."""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def descendants(root):
    """PIDs of every process under ROOT, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="the address plumb ui printed, with its token")
    p.add_argument("--containers", required=True, help="every container of the stack, comma-separated")
    p.add_argument("--watch", required=True, help="the container whose rx counter must move")
    p.add_argument("--traffic", required=True, help="a shell command making traffic to --watch")
    p.add_argument("--capture", required=True, help="the container to capture on (TRAFFIC must reach it)")
    p.add_argument("--seconds", type=int, default=2)
    p.add_argument("--denied", required=True, help="the service whose ingress denial must show")
    p.add_argument("--trace-from", required=True)
    p.add_argument("--trace-to", required=True)
    p.add_argument("--downloads", required=True)
    a = p.parse_args()

    profile = tempfile.mkdtemp(prefix="plumb-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    # As root in a network namespace: chromium's own sandbox cannot start (--no-sandbox).
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={profile}", "--window-size=1600,1000"]:
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": a.downloads,
        "download.prompt_for_download": False,
    })
    service = Service("/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid
    seen = {}
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": a.downloads})
        wait = WebDriverWait(driver, 20, poll_frequency=0.2)
        base = a.url.split("?")[0].rstrip("/")
        driver.get(a.url)
        # The token went into a cookie and out of the address.
        seen["address_after_token"] = driver.current_url
        if "token=" in driver.current_url:
            fail("the token stayed in the address bar", driver)
        driver.get(f"{base}/?seconds={a.seconds}")

        expected = sorted(a.containers.split(","))

        def drawn(d):
            names = sorted(g.get_attribute("data-container")
                           for g in d.find_elements(By.CSS_SELECTOR, "svg#graph g.ctr[data-container]"))
            return names if names == expected else False
        try:
            seen["containers"] = wait.until(drawn)
        except Exception:
            fail(f"not every container drawn: want {expected}", driver)

        counter = f'svg#graph g.ctr[data-container="{a.watch}"] .rx-total'

        def value(d):
            v = d.find_element(By.CSS_SELECTOR, counter).get_attribute("data-value")
            return int(v) if v and int(v) > 0 else False
        before = wait.until(value)
        subprocess.run(["bash", "-c", a.traffic], check=True, stdout=subprocess.DEVNULL)
        try:
            after = wait.until(lambda d: (value(d) or 0) > before and value(d))
        except Exception:
            fail(f"{a.watch}'s rx counter stayed at {before} after the traffic", driver)
        seen["counter"] = {"before": before, "after": after,
                           "text": driver.find_element(By.CSS_SELECTOR, counter).text}

        def denial(d):
            for li in d.find_elements(By.CSS_SELECTOR, f'#denials li.denied[data-service="{a.denied}"]'):
                if li.value_of_css_property("color") in ("rgba(204, 0, 0, 1)", "rgb(204, 0, 0)"):
                    return li.text
            return False
        try:
            seen["denial"] = wait.until(denial)
        except Exception:
            fail(f"no denial of {a.denied} shown in red", driver)
        seen["denied_service_red"] = "denied" in driver.find_element(
            By.CSS_SELECTOR, f'svg#graph g.svc[data-service="{a.denied}"]').get_attribute("class")

        # The trace form.
        driver.find_element(By.CSS_SELECTOR, f'#trace-from option[value="{a.trace_from}"]').click()
        driver.find_element(By.ID, "trace-to").send_keys(a.trace_to)
        driver.find_element(By.ID, "trace-go").click()
        try:
            seen["trace"] = WebDriverWait(driver, 30, 0.2).until(
                lambda d: d.find_elements(By.ID, "trace-outcome") and d.find_element(By.ID, "trace-outcome").text)
            seen["trace_steps"] = len(driver.find_elements(By.CSS_SELECTOR, "#trace-path li"))
        except Exception:
            fail("the trace form showed no outcome", driver)

        # A container's panel and its capture button.
        driver.find_element(By.CSS_SELECTOR, f'svg#graph g.ctr[data-container="{a.capture}"] text.name').click()
        link = wait.until(lambda d: d.find_elements(By.ID, "capture") and d.find_element(By.ID, "capture"))
        seen["capture_button"] = link.text
        seen["sockets_shown"] = len(driver.find_elements(By.CSS_SELECTOR, "#detail-body table"))
        seen["log"] = driver.find_element(By.ID, "log").text
        link.click()
        # Packets for the capture to hold (TRAFFIC reaches the captured container too).
        time.sleep(0.5)
        subprocess.run(["bash", "-c", a.traffic], check=True, stdout=subprocess.DEVNULL)
        deadline = time.time() + a.seconds + 30
        done = []
        while time.time() < deadline:
            names = os.listdir(a.downloads)
            done = [n for n in names if n.endswith(".pcapng")]
            if done and not any(n.endswith(".crdownload") for n in names):
                break
            time.sleep(0.2)
        if not done:
            fail(f"no capture downloaded within {a.seconds + 30} s: {os.listdir(a.downloads)}", driver)
        seen["download"] = os.path.join(a.downloads, done[0])
    finally:
        pids = descendants(driver_pid) + [driver_pid]
        try:
            driver.quit()
        except Exception:
            pass
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        for pid in pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        subprocess.run(["rm", "-rf", profile])
    print(json.dumps(seen))


def fail(why, driver):
    try:
        shot = driver.find_element(By.TAG_NAME, "body").text[:3000]
    except Exception:
        shot = "(no page)"
    print(f"browser: {why}\n--- the page's text ---\n{shot}", file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
    main()
